{#- The rows of `relation` (a CTE or a relation) that come first in their partition by `order_by`:
    one row per distinct `partition_by` values, as a derived table (`select * from {{ deduplicate(...) }}`).
    The rank is kept as `row_rank`; a staging model selects its columns by name. -#}

{% macro deduplicate(relation, partition_by, order_by) -%}
    (
        select *
        from (
            select
                *,
                row_number() over (
                    partition by {{ partition_by | join(', ') }}
                    order by {{ order_by | join(', ') }}
                ) as row_rank
            from {{ relation }}
        ) as ranked
        where row_rank = 1
    ) as deduplicated
{%- endmacro %}
