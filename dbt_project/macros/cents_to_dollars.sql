{#
    Integer minor units (cents, pence) → decimal currency units with two places, exactly:
    every value below 2^53 cents survives the division and the cast unchanged.
#}
{% macro cents_to_dollars(column_name) -%}
    cast(({{ column_name }}) / 100 as decimal(18, 2))
{%- endmacro %}
