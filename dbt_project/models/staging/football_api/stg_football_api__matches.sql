{%- set raw = existing_columns(source('football_api', 'matches')) -%}

with

source as (

    select * from {{ source_or_empty('football_api', 'matches') }}

),

renamed as (

    select
        cast(id as integer) as match_id,
        cast(competition__id as integer) as competition_id,
        cast(season_year as integer) as season_year,
        {{ column_or_null(raw, 'season__id', 'integer') }} as season_id,
        cast(utc_date as timestamp with time zone) as kickoff_at,
        cast(cast(utc_date as timestamp with time zone) at time zone 'UTC' as date) as match_date,
        status,
        {{ column_or_null(raw, 'matchday', 'integer') }} as matchday,
        {{ column_or_null(raw, 'stage') }} as stage,
        {{ column_or_null(raw, 'group') }} as group_name,
        cast(home_team__id as integer) as home_team_id,
        cast(away_team__id as integer) as away_team_id,
        {{ column_or_null(raw, 'score__full_time__home', 'integer') }} as home_goals,
        {{ column_or_null(raw, 'score__full_time__away', 'integer') }} as away_goals,
        {{ column_or_null(raw, 'score__half_time__home', 'integer') }} as home_half_time_goals,
        {{ column_or_null(raw, 'score__half_time__away', 'integer') }} as away_half_time_goals,
        {{ column_or_null(raw, 'score__winner') }} as winner,
        {{ column_or_null(raw, 'score__duration') }} as duration,
        {{ column_or_null(raw, 'last_updated', 'timestamp with time zone') }} as last_updated_at
    from source

)

select * from renamed
