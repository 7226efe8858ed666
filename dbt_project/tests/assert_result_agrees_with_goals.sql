-- The published full-time result (FTR) must agree with the published score (FTHG/FTAG).
select
    match_id,
    home_goals,
    away_goals,
    result
from {{ ref('fct_matches') }}
where result is not null
    and home_goals is not null
    and away_goals is not null
    and result <> case
        when home_goals > away_goals then 'H'
        when home_goals = away_goals then 'D'
        else 'A'
    end
