{#- Models land in the schema their folder names (staging, intermediate, marts), not in
    <target schema>_<folder>: the warehouse layout is the same on every target. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
