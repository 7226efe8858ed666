{%- set raw = existing_columns(source('football_api', 'teams__squad')) -%}

with

squad as (

    select * from {{ source_or_empty('football_api', 'teams__squad') }}

),

teams as (

    select
        id,
        _dlt_id
    from {{ source_or_empty('football_api', 'teams') }}

),

renamed as (

    select
        cast(teams.id as integer) as team_id,
        cast(squad.id as integer) as player_id,
        squad.name as player_name,
        nullif(trim({{ column_or_null(raw, 'position') }}), '') as position,
        -- The API mixes a coarse vocabulary with detailed and off-vocabulary labels.
        case
            when {{ column_or_null(raw, 'position') }} in ('Goalkeeper', 'Keeper') then 'Goalkeeper'
            when {{ column_or_null(raw, 'position') }} in ('Defence', 'Defender')
                or {{ column_or_null(raw, 'position') }} like '%Back' then 'Defence'
            when {{ column_or_null(raw, 'position') }} in ('Midfield', 'Midfielder')
                or {{ column_or_null(raw, 'position') }} like '%Midfield' then 'Midfield'
            when {{ column_or_null(raw, 'position') }} in ('Offence', 'Forward', 'Attacker')
                or {{ column_or_null(raw, 'position') }} like '%Winger'
                or {{ column_or_null(raw, 'position') }} = 'Centre-Forward' then 'Offence'
        end as position_group,
        {{ column_or_null(raw, 'date_of_birth', 'date') }} as born_on,
        {{ column_or_null(raw, 'nationality') }} as nationality
    from squad
    inner join teams on squad._dlt_parent_id = teams._dlt_id

)

select * from renamed
