with

competition_teams as (

    select * from {{ ref('fct_competition_teams') }}

),

competitions as (

    select * from {{ ref('dim_competitions') }}

),

final as (

    select
        competitions.competition_code,
        competitions.competition_name,
        competitions.area_name,
        competition_teams.season,
        cast(count(*) as integer) as teams
    from competition_teams
    inner join competitions
        on competition_teams.competition_id = competitions.competition_id
    group by
        competitions.competition_code,
        competitions.competition_name,
        competitions.area_name,
        competition_teams.season

)

select * from final
