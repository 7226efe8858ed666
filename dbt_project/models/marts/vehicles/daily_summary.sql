{{
    config(
        materialized='incremental',
        unique_key=['vehicle_id', 'day'],
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns'
    )
}}

with

events as (

    select * from {{ ref('fct_vehicle_events') }}

),

{% if is_incremental() %}
touched_days as (

    -- A late file recomputes only the vehicle-days it has events for.
    select distinct vehicle_id, event_date
    from events
    where batch_id > (select coalesce(max(last_batch_id), '') from {{ this }})

),

in_scope as (

    select events.*
    from events
    inner join touched_days
        on events.vehicle_id = touched_days.vehicle_id
            and events.event_date = touched_days.event_date

),
{% else %}
in_scope as (

    select * from events

),
{% endif %}

ranked as (

    select
        vehicle_id,
        event_date,
        event_at,
        event_type,
        -- Latest first; events at the same instant are ordered by type, source, value and id
        -- (alphabetically) so the choice never depends on load order.
        row_number() over (
            partition by vehicle_id, event_date
            order by event_at desc, event_type asc, event_source asc, event_value asc, event_id asc
        ) as recency,
        max(batch_id) over (partition by vehicle_id, event_date) as last_batch_id
    from in_scope

),

final as (

    select
        vehicle_id,
        event_date as day,
        event_at as last_event_time,
        event_type as last_event_type,
        last_batch_id
    from ranked
    where recency = 1

)

select * from final
