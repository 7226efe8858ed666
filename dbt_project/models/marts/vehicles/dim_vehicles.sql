with

events as (

    select * from {{ ref('fct_vehicle_events') }}

),

status_reports as (

    select * from {{ ref('stg_vehicles__status') }}

),

event_totals as (

    select
        vehicle_id,
        min(event_at) as first_event_at,
        max(event_at) as last_event_at,
        cast(count(*) as integer) as events
    from events
    group by vehicle_id

),

latest_status as (

    select
        vehicle_id,
        status,
        reported_at,
        row_number() over (
            partition by vehicle_id
            order by reported_at desc, status asc, status_source asc, status_report_id asc
        ) as recency
    from status_reports

),

vehicles as (

    select vehicle_id from event_totals
    union
    select vehicle_id from status_reports

),

final as (

    select
        vehicles.vehicle_id,
        event_totals.first_event_at,
        event_totals.last_event_at,
        coalesce(event_totals.events, 0) as events,
        latest_status.status as last_status,
        latest_status.reported_at as last_status_at
    from vehicles
    left join event_totals
        on vehicles.vehicle_id = event_totals.vehicle_id
    left join latest_status
        on vehicles.vehicle_id = latest_status.vehicle_id
            and latest_status.recency = 1

)

select * from final
