{#- The conformed team key: the football-data.org id where the team is known to the API,
    otherwise the football-data.co.uk name. -#}
{% macro team_key(api_team_id, football_data_team_name) -%}
    cast(md5(
        case
            when {{ api_team_id }} is not null
                then 'football-data.org:' || cast({{ api_team_id }} as {{ dbt.type_string() }})
            else 'football-data.co.uk:' || {{ football_data_team_name }}
        end
    ) as {{ dbt.type_string() }})
{%- endmacro %}
