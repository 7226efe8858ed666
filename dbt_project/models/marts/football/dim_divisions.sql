with

divisions as (

    select * from {{ ref('divisions') }}

),

final as (

    select
        cast(division_code as {{ dbt.type_string() }}) as division_code,
        cast(division_name as {{ dbt.type_string() }}) as division_name,
        cast(country as {{ dbt.type_string() }}) as country,
        cast(tier as integer) as tier,
        cast(api_competition_code as {{ dbt.type_string() }}) as api_competition_code
    from divisions

)

select * from final
