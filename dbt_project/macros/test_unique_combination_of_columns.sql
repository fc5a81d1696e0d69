{#
    Generic test: no two rows share the same values in `combination_of_columns` — the grain
    of a model keyed on several columns. Fails with one row per duplicated combination.
#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

select
    {{ combination_of_columns | join(', ') }},
    count(*) as duplicate_rows
from {{ model }}
group by {{ combination_of_columns | join(', ') }}
having count(*) > 1

{% endtest %}
