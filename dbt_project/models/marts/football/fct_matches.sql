with

matches as (

    select * from {{ ref('stg_football_data__matches') }}

),

team_keys as (

    select * from {{ ref('int_teams__football_data_names') }}

),

final as (

    select
        cast(md5(
            {{ dbt.concat([
                "matches.division_code", "'|'", "matches.season_code",
                "'|'", "cast(matches.match_date as " ~ dbt.type_string() ~ ")",
                "'|'", "matches.home_team_name", "'|'", "matches.away_team_name"
            ]) }}
        ) as {{ dbt.type_string() }}) as match_id,
        matches.division_code,
        matches.season_code,
        matches.match_date,
        matches.kickoff_time,
        matches.home_team_name,
        matches.away_team_name,
        home_teams.team_key as home_team_key,
        away_teams.team_key as away_team_key,
        matches.home_goals,
        matches.away_goals,
        matches.result,
        matches.home_half_time_goals,
        matches.away_half_time_goals,
        matches.half_time_result,
        matches.referee_name,
        matches.attendance,
        matches.home_shots,
        matches.away_shots,
        matches.home_shots_on_target,
        matches.away_shots_on_target,
        matches.home_corners,
        matches.away_corners,
        matches.home_fouls,
        matches.away_fouls,
        matches.home_yellow_cards,
        matches.away_yellow_cards,
        matches.home_red_cards,
        matches.away_red_cards,
        matches.bet365_home_win_odds,
        matches.bet365_draw_odds,
        matches.bet365_away_win_odds,
        matches.average_home_win_odds,
        matches.average_draw_odds,
        matches.average_away_win_odds
    from matches
    left join team_keys as home_teams
        on matches.home_team_name = home_teams.football_data_team_name
    left join team_keys as away_teams
        on matches.away_team_name = away_teams.football_data_team_name

)

select * from final
