{{
    config(
        materialized='incremental',
        unique_key='event_id',
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns'
    )
}}

with

events as (

    select * from {{ ref('stg_vehicles__events') }}

    {% if is_incremental() %}
    -- Only lake batches committed since the last build (batch ids sort in commit order).
    where batch_id > (select coalesce(max(batch_id), '') from {{ this }})
    {% endif %}

),

final as (

    select
        event_id,
        vehicle_id,
        event_at,
        event_date,
        event_source,
        event_type,
        event_value,
        event_extra_data,
        batch_id,
        source_file,
        source_position
    from events

)

select * from final
