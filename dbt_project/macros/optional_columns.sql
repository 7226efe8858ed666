{#- The raw tables grow columns as new data arrives (schema evolution; dlt only creates a column
    once a value is non-null), so a staging model may meet a table without, say, `referee`.
    These macros select such a column when it exists and a typed null otherwise. -#}

{% macro existing_columns(relation) -%}
    {%- if not execute -%}
        {{ return([]) }}
    {%- endif -%}
    {%- set names = [] -%}
    {%- for column in adapter.get_columns_in_relation(relation) -%}
        {%- do names.append(column.name | lower) -%}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}

{% macro column_or_null(existing, column_name, data_type=none) -%}
    {%- set type = data_type or dbt.type_string() -%}
    {%- if column_name in existing and data_type is none -%}
        {{ adapter.quote(column_name) }}
    {%- elif column_name in existing -%}
        cast({{ adapter.quote(column_name) }} as {{ type }})
    {%- else -%}
        cast(null as {{ type }})
    {%- endif -%}
{%- endmacro %}

{% macro first_existing_column(existing, column_names) -%}
    {%- set present = [] -%}
    {%- for name in column_names if name in existing -%}
        {%- do present.append(adapter.quote(name)) -%}
    {%- endfor -%}
    {%- if present | length == 0 -%}
        cast(null as {{ dbt.type_string() }})
    {%- elif present | length == 1 -%}
        {{ present[0] }}
    {%- else -%}
        coalesce({{ present | join(', ') }})
    {%- endif -%}
{%- endmacro %}
