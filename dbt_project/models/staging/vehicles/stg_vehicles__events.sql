with

source as (

    select * from {{ source_or_empty('vehicles', 'vehicle_events') }}

),

first_delivery as (

    -- Producers resend records: an exact repeat keeps its first delivery only.
    select *
    from {{ deduplicate(
        'source',
        partition_by=['vehicle_id', 'event_time', 'event_type', 'event_source', 'event_value', 'event_extra_data'],
        order_by=['batch_id', 'source_file', 'source_position']
    ) }}

),

renamed as (

    select
        cast(md5(
            {{ dbt.concat([
                "vehicle_id", "'|'", "cast(event_time as " ~ dbt.type_string() ~ ")", "'|'", "event_type",
                "'|'", "coalesce(event_source, '')", "'|'", "coalesce(event_value, '')",
                "'|'", "coalesce(event_extra_data, '')"
            ]) }}
        ) as {{ dbt.type_string() }}) as event_id,
        vehicle_id,
        event_time as event_at,
        cast(event_time at time zone 'UTC' as date) as event_date,
        event_source,
        event_type,
        event_value,
        event_extra_data,
        source_file,
        source_position,
        batch_id,
        ingested_at
    from first_delivery

)

select * from renamed
