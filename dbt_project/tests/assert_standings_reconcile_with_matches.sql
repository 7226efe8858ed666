-- Every table must account for every scored match: two appearances per match, goals scored
-- equal to goals conceded, and 3 points per decisive match plus 2 per draw.
with

matches as (

    select
        division_code,
        season_code,
        count(*) as scored_matches,
        sum(case when home_goals = away_goals then 1 else 0 end) as draws
    from {{ ref('fct_matches') }}
    where home_goals is not null and away_goals is not null
    group by division_code, season_code

),

tables as (

    select
        division_code,
        season_code,
        sum(played) as appearances,
        sum(goals_for) as goals_for,
        sum(goals_against) as goals_against,
        sum(points) as points
    from {{ ref('fct_standings') }}
    group by division_code, season_code

)

select
    matches.division_code,
    matches.season_code,
    matches.scored_matches,
    tables.appearances,
    tables.points
from matches
left join tables
    on matches.division_code = tables.division_code
        and matches.season_code = tables.season_code
where tables.appearances is null
    or tables.appearances <> 2 * matches.scored_matches
    or tables.goals_for <> tables.goals_against
    or tables.points <> 3 * (matches.scored_matches - matches.draws) + 2 * matches.draws
