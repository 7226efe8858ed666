with

competition_teams as (

    select * from {{ ref('stg_football_api__competition_teams') }}

),

final as (

    select
        competition_id,
        team_id,
        season_year as season
    from competition_teams

)

select * from final
