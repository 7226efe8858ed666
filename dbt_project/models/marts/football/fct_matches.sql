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
            {{ dbt.concat(["division_code", "'|'", "season_code", "'|'", "cast(match_date as " ~ dbt.type_string() ~ ")",
                           "'|'", "home_team_name", "'|'", "away_team_name"]) }}
        ) as {{ dbt.type_string() }}) as match_id,
        division_code,
        season_code,
        match_date,
        kickoff_time,
        home_team_name,
        away_team_name,
        home_teams.team_key as home_team_key,
        away_teams.team_key as away_team_key,
        home_goals,
        away_goals,
        result,
        home_half_time_goals,
        away_half_time_goals,
        half_time_result,
        referee_name,
        attendance,
        home_shots,
        away_shots,
        home_shots_on_target,
        away_shots_on_target,
        home_corners,
        away_corners,
        home_fouls,
        away_fouls,
        home_yellow_cards,
        away_yellow_cards,
        home_red_cards,
        away_red_cards,
        bet365_home_win_odds,
        bet365_draw_odds,
        bet365_away_win_odds,
        average_home_win_odds,
        average_draw_odds,
        average_away_win_odds
    from matches
    left join team_keys as home_teams
        on matches.home_team_name = home_teams.football_data_team_name
    left join team_keys as away_teams
        on matches.away_team_name = away_teams.football_data_team_name

)

select * from final
