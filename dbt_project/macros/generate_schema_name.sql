{#
    Use a model's custom schema as it is (`marts`, not `main_marts`), so every environment
    has the same schema names; the target's schema is used only where none is configured.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
