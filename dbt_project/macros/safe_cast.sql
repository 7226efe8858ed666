{#- Casts that yield null instead of failing on text that is not a number: raw columns are
    kept as text by the loaders, and one bad cell must not stop a build. -#}

{% macro safe_integer(expression) -%}
    {{ return(adapter.dispatch('safe_integer')(expression)) }}
{%- endmacro %}

{% macro default__safe_integer(expression) -%}
    case when trim({{ expression }}) ~ '^[+-]?[0-9]+(\.0*)?$'
        then cast(cast(trim({{ expression }}) as numeric) as integer) end
{%- endmacro %}

{% macro duckdb__safe_integer(expression) -%}
    try_cast(try_cast(trim({{ expression }}) as decimal(18, 6)) as integer)
{%- endmacro %}

{% macro safe_double(expression) -%}
    {{ return(adapter.dispatch('safe_double')(expression)) }}
{%- endmacro %}

{% macro default__safe_double(expression) -%}
    case when trim({{ expression }}) ~ '^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$'
        then cast(trim({{ expression }}) as double precision) end
{%- endmacro %}

{% macro duckdb__safe_double(expression) -%}
    try_cast(trim({{ expression }}) as double)
{%- endmacro %}
