with

standings as (

    select * from {{ ref('fct_standings') }}
    where position = 1

),

divisions as (

    select * from {{ ref('dim_divisions') }}

),

seasons as (

    select * from {{ ref('dim_seasons') }}

),

final as (

    select
        standings.division_code,
        divisions.division_name,
        divisions.country,
        seasons.season_label,
        standings.team_name as leader,
        standings.team_key,
        standings.played,
        standings.points,
        standings.goal_difference
    from standings
    inner join divisions
        on standings.division_code = divisions.division_code
    inner join seasons
        on standings.season_code = seasons.season_code

)

select * from final
