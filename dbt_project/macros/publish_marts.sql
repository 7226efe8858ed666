{#- Publish audited marts: every model configured for the `marts` schema is copied from
    marts_audit to marts in a single transaction (the one dbt opens for run-operation and
    commits at its end), so readers see the old or the new marts, never a mix. Run after a
    green `dbt build --vars '{audit: true}'`; `skipped` names marts that build left out (their
    sources were never loaded): whatever marts holds of them stays as it is. -#}
{% macro publish_marts(skipped=[]) %}
    {%- set statements = [] -%}
    {%- for node in graph.nodes.values()
        if node.resource_type == 'model' and node.config.schema == 'marts' and node.config.materialized != 'ephemeral'
        and node.name not in skipped -%}
        {#- A selective build (say, football only) audits some marts; publish those that exist. -#}
        {%- if adapter.get_relation(database=target.database, schema='marts_audit', identifier=node.name) is not none -%}
            {%- do statements.append(publish_table_sql(node.name)) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- call statement('publish_marts') -%}
        create schema if not exists marts;
        {% for sql in statements %}{{ sql }}{% endfor %}
    {%- endcall -%}
    {% do adapter.commit() %}
    {{ log("published " ~ statements | length ~ " marts from marts_audit", info=true) }}
{% endmacro %}

{% macro publish_table_sql(name) -%}
    {{ return(adapter.dispatch('publish_table_sql')(name)) }}
{%- endmacro %}

{% macro default__publish_table_sql(name) -%}
    drop table if exists marts.{{ name }} cascade;
    create table marts.{{ name }} as select * from marts_audit.{{ name }};
{% endmacro %}

{% macro duckdb__publish_table_sql(name) -%}
    create or replace table marts.{{ name }} as select * from marts_audit.{{ name }};
{% endmacro %}
