with

source as (

    select * from {{ source_or_empty('football_api', 'competition_teams') }}

),

renamed as (

    select
        cast(competition_id as integer) as competition_id,
        cast(team_id as integer) as team_id,
        cast(season as integer) as season_year
    from source

)

select * from renamed
