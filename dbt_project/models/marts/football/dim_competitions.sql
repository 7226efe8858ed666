with

competitions as (

    select * from {{ ref('stg_football_api__competitions') }}

),

divisions as (

    select * from {{ ref('divisions') }}

),

final as (

    select
        competitions.competition_id,
        competitions.competition_code,
        competitions.competition_name,
        competitions.competition_type,
        competitions.plan,
        competitions.area_name,
        competitions.area_code,
        cast(divisions.division_code as {{ dbt.type_string() }}) as division_code,
        competitions.current_season_starts_on,
        competitions.current_season_ends_on,
        competitions.current_matchday,
        competitions.available_seasons,
        competitions.emblem_url,
        competitions.last_updated_at
    from competitions
    left join divisions
        on competitions.competition_code = divisions.api_competition_code

)

select * from final
