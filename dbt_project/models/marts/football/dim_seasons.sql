with

seasons as (

    select distinct
        season_code,
        season_start_year
    from {{ ref('stg_football_data__matches') }}

),

final as (

    select
        cast(season_code as {{ dbt.type_string() }}) as season_code,
        cast(season_start_year as integer) as start_year,
        cast(season_start_year + 1 as integer) as end_year,
        cast(
            cast(season_start_year as {{ dbt.type_string() }})
            || '/' || substring(season_code, 3, 2)
            as {{ dbt.type_string() }}
        ) as season_label,
        -- The window the loader accepts match dates in: 1 July to 31 August of the next year.
        cast(
            {{ dbt.concat(["cast(season_start_year as " ~ dbt.type_string() ~ ")", "'-07-01'"]) }} as date
        ) as starts_on,
        cast(
            {{ dbt.concat(["cast(season_start_year + 1 as " ~ dbt.type_string() ~ ")", "'-08-31'"]) }} as date
        ) as ends_on
    from seasons

)

select * from final
