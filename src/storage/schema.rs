//! Diesel's view of the tables in `migrations/`. Both backends share it: column types are the
//! portable subset (text, big integers, booleans).

diesel::table! {
    accounts (id) {
        id -> BigInt,
        tier -> Text,
        data_center -> Text,
        subdomain -> Text,
        create_time -> BigInt,
        update_time -> BigInt,
    }
}

diesel::table! {
    account_sending_domains (account_id, domain) {
        account_id -> BigInt,
        domain -> Text,
    }
}

diesel::table! {
    users (account_id, id) {
        account_id -> BigInt,
        id -> BigInt,
        email -> Text,
        super_admin -> Bool,
        account_access -> Bool,
        deleted -> Bool,
        update_time -> BigInt,
    }
}

diesel::table! {
    teams (account_id, id) {
        account_id -> BigInt,
        id -> BigInt,
        name -> Text,
        update_time -> BigInt,
    }
}

diesel::table! {
    team_members (account_id, team_id, user_id) {
        account_id -> BigInt,
        team_id -> BigInt,
        user_id -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    accounts,
    account_sending_domains,
    users,
    teams,
    team_members,
);
