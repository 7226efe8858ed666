{%- set raw = existing_columns(source('football_api', 'teams')) -%}

with

source as (

    select * from {{ source_or_empty('football_api', 'teams') }}

),

renamed as (

    select
        cast(id as integer) as team_id,
        name as team_name,
        {{ column_or_null(raw, 'short_name') }} as short_name,
        {{ column_or_null(raw, 'tla') }} as tla,
        {{ column_or_null(raw, 'area__name') }} as area_name,
        {{ column_or_null(raw, 'area__code') }} as area_code,
        {{ column_or_null(raw, 'founded', 'integer') }} as founded_year,
        {{ column_or_null(raw, 'club_colors') }} as club_colors,
        {{ column_or_null(raw, 'venue') }} as venue_name,
        {{ column_or_null(raw, 'website') }} as website_url,
        {{ column_or_null(raw, 'crest') }} as crest_url,
        {{ column_or_null(raw, 'coach__name') }} as coach_name,
        {{ column_or_null(raw, 'last_updated', 'timestamp with time zone') }} as last_updated_at,
        _dlt_id as team_record_id
    from source

)

select * from renamed
