{#- Models land in the schema their folder names (staging, intermediate, marts), not in
    <target schema>_<folder>: the warehouse layout is the same on every target.

    Write-audit-publish: with `--vars '{audit: true}'` (the orchestrated build) marts are
    written to `marts_audit` and tested there; `dbt run-operation publish_marts` then copies
    them to `marts` in one transaction. A failing test therefore never touches `marts`. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- elif custom_schema_name | trim == 'marts' and var('audit', false) -%}
        marts_audit
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
