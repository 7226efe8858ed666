{#- A warehouse where a source was never loaded (only football-data.co.uk, say) still builds
    what the loaded sources feed. The planned build (orchestration/build_plan.py, used by the
    `elt` flow and `make build`) first checks that every missing source table was never loaded,
    not dropped after loading; it leaves out the models and tests that read only never-loaded
    tables and passes `never_loaded_as_empty: true`. A staging model that a built model still
    needs (the API teams that conform football-data.co.uk names, say) then reads an empty
    relation typed from the columns its source declares. Without the var a missing table stays
    an error, as in plain `dbt build`. -#}

{% macro source_or_empty(source_name, table_name) -%}
    {#- source() runs at parse time too, so lineage and freshness still see the source. -#}
    {%- set relation = source(source_name, table_name) -%}
    {%- if execute and var('never_loaded_as_empty', false) and load_relation(relation) is none -%}
        {{ return(empty_source(source_name, table_name)) }}
    {%- endif -%}
    {{ return(relation) }}
{%- endmacro %}

{% macro empty_source(source_name, table_name) -%}
    {%- set declared = graph.sources['source.' ~ project_name ~ '.' ~ source_name ~ '.' ~ table_name].columns.values() -%}
    {%- if declared | length == 0 -%}
        {{ exceptions.raise_compiler_error(
            "source " ~ source_name ~ "." ~ table_name ~ " declares no columns to build an empty stand-in from") }}
    {%- endif -%}
    {%- set columns = [] -%}
    {%- for column in declared -%}
        {%- do columns.append(
            'cast(null as ' ~ (column.data_type or dbt.type_string()) ~ ') as ' ~ adapter.quote(column.name)) -%}
    {%- endfor -%}
    {{ return('(select ' ~ columns | join(', ') ~ ' where 1 = 0) as ' ~ adapter.quote(table_name)) }}
{%- endmacro %}
