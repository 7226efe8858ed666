with

team_results as (

    select * from {{ ref('int_football_data__team_match_results') }}

),

team_keys as (

    select * from {{ ref('int_teams__football_data_names') }}

),

totals as (

    select
        division_code,
        season_code,
        team_name,
        cast(count(*) as integer) as played,
        cast(sum(case when outcome = 'won' then 1 else 0 end) as integer) as won,
        cast(sum(case when outcome = 'drawn' then 1 else 0 end) as integer) as drawn,
        cast(sum(case when outcome = 'lost' then 1 else 0 end) as integer) as lost,
        cast(sum(goals_for) as integer) as goals_for,
        cast(sum(goals_against) as integer) as goals_against,
        cast(sum(goals_for) - sum(goals_against) as integer) as goal_difference,
        cast(sum(points) as integer) as points
    from team_results
    group by division_code, season_code, team_name

),

final as (

    select
        totals.division_code,
        totals.season_code,
        totals.team_name,
        team_keys.team_key,
        totals.played,
        totals.won,
        totals.drawn,
        totals.lost,
        totals.goals_for,
        totals.goals_against,
        totals.goal_difference,
        totals.points,
        -- Points, then goal difference, then goals scored; the team name only makes the order
        -- total. Head-to-head rules and points deductions are not in the source data.
        cast(row_number() over (
            partition by totals.division_code, totals.season_code
            order by totals.points desc, totals.goal_difference desc, totals.goals_for desc, totals.team_name asc
        ) as integer) as position
    from totals
    inner join team_keys
        on totals.team_name = team_keys.football_data_team_name

)

select * from final
