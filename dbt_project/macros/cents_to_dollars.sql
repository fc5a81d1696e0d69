{#
    Integer minor units (cents, pence) to decimal currency units with two places. Dividing
    by 100.0, not 100, keeps it exact on PostgreSQL too, where bigint / 100 truncates.
#}
{% macro cents_to_dollars(column_name) -%}
    cast({{ column_name }} / 100.0 as decimal(18, 2))
{%- endmacro %}
