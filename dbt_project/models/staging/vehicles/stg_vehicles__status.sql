with

source as (

    select * from {{ source_or_empty('vehicles', 'vehicle_status') }}

),

first_delivery as (

    -- Producers resend records: an exact repeat keeps its first delivery only.
    select *
    from {{ deduplicate(
        'source',
        partition_by=['vehicle_id', 'report_time', 'status_source', 'status'],
        order_by=['batch_id', 'source_file', 'source_position']
    ) }}

),

renamed as (

    select
        cast(md5(
            {{ dbt.concat([
                "vehicle_id", "'|'", "cast(report_time as " ~ dbt.type_string() ~ ")",
                "'|'", "coalesce(status_source, '')", "'|'", "status"
            ]) }}
        ) as {{ dbt.type_string() }}) as status_report_id,
        vehicle_id,
        report_time as reported_at,
        cast(report_time at time zone 'UTC' as date) as report_date,
        status_source,
        status,
        source_file,
        source_position,
        batch_id,
        ingested_at
    from first_delivery

)

select * from renamed
