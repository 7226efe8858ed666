{%- set raw = existing_columns(source('football_api', 'competitions')) -%}

with

source as (

    select * from {{ source_or_empty('football_api', 'competitions') }}

),

renamed as (

    select
        cast(id as integer) as competition_id,
        code as competition_code,
        name as competition_name,
        type as competition_type,
        {{ column_or_null(raw, 'plan') }} as plan,
        cast(area__id as integer) as area_id,
        area__name as area_name,
        {{ column_or_null(raw, 'area__code') }} as area_code,
        {{ column_or_null(raw, 'current_season__id', 'integer') }} as current_season_id,
        {{ column_or_null(raw, 'current_season__start_date', 'date') }} as current_season_starts_on,
        {{ column_or_null(raw, 'current_season__end_date', 'date') }} as current_season_ends_on,
        {{ column_or_null(raw, 'current_season__current_matchday', 'integer') }} as current_matchday,
        {{ column_or_null(raw, 'current_season__winner__id', 'integer') }} as current_season_winner_team_id,
        {{ column_or_null(raw, 'number_of_available_seasons', 'integer') }} as available_seasons,
        {{ column_or_null(raw, 'emblem') }} as emblem_url,
        {{ column_or_null(raw, 'last_updated', 'timestamp with time zone') }} as last_updated_at
    from source

)

select * from renamed
