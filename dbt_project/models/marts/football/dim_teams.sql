with

api_teams as (

    select * from {{ ref('stg_football_api__teams') }}

),

football_data_names as (

    select * from {{ ref('int_teams__football_data_names') }}

),

api_team_spellings as (

    select
        api_team_id,
        min(football_data_team_name) as football_data_team_name
    from football_data_names
    where api_team_id is not null
    group by api_team_id

),

known_to_the_api as (

    select
        {{ team_key('api_teams.team_id', 'cast(null as ' ~ dbt.type_string() ~ ')') }} as team_key,
        api_teams.team_id as api_team_id,
        api_teams.team_name,
        api_teams.short_name,
        api_teams.tla,
        api_teams.area_name,
        api_teams.founded_year,
        api_teams.venue_name,
        spellings.football_data_team_name,
        true as is_known_to_api
    from api_teams
    left join api_team_spellings as spellings
        on api_teams.team_id = spellings.api_team_id

),

only_in_football_data as (

    select
        team_key,
        cast(null as integer) as api_team_id,
        football_data_team_name as team_name,
        cast(null as {{ dbt.type_string() }}) as short_name,
        cast(null as {{ dbt.type_string() }}) as tla,
        cast(null as {{ dbt.type_string() }}) as area_name,
        cast(null as integer) as founded_year,
        cast(null as {{ dbt.type_string() }}) as venue_name,
        football_data_team_name,
        false as is_known_to_api
    from football_data_names
    where api_team_id is null

),

final as (

    select * from known_to_the_api
    union all
    select * from only_in_football_data

)

select * from final
