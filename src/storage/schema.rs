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

diesel::table! {
    domain_settings (account_id, domain) {
        account_id -> BigInt,
        domain -> Text,
        kind -> Text,
        settings -> Text,
        version -> BigInt,
        create_time -> BigInt,
        update_time -> BigInt,
        updated_by_user_id -> BigInt,
        last_verified_time -> Nullable<BigInt>,
    }
}

diesel::table! {
    allowlist_data_centers (id) {
        id -> Text,
        version -> BigInt,
        update_time -> Nullable<BigInt>,
    }
}

diesel::table! {
    domain_settings_requests (account_id, request_id) {
        account_id -> BigInt,
        request_id -> Text,
        domain -> Text,
        response -> Text,
        create_time -> BigInt,
    }
}

diesel::table! {
    allowlist_ranges (data_center, protocol, cidr) {
        data_center -> Text,
        protocol -> Text,
        cidr -> Text,
        effective_time -> BigInt,
        retire_time -> Nullable<BigInt>,
    }
}

diesel::table! {
    attempted_domains (account_id, domain) {
        account_id -> BigInt,
        domain -> Text,
        attempts -> BigInt,
        first_attempt_time -> BigInt,
        last_attempt_time -> BigInt,
    }
}

diesel::table! {
    allowlist_changes (id) {
        id -> BigInt,
        data_center -> Text,
        version -> BigInt,
        protocol -> Text,
        publish_time -> BigInt,
        effective_time -> BigInt,
        added -> Text,
        removed -> Text,
    }
}

diesel::table! {
    inboxes (id) {
        id -> BigInt,
        account_id -> BigInt,
        display_name -> Text,
        version -> BigInt,
        created_by_user_id -> BigInt,
        create_time -> BigInt,
        update_time -> BigInt,
    }
}

diesel::table! {
    connections (id) {
        id -> BigInt,
        account_id -> BigInt,
        email_address -> Text,
        address_key -> Text,
        kind -> Text,
        provider -> Text,
        owner_user_id -> BigInt,
        inbox_id -> Nullable<BigInt>,
        state -> Text,
        disconnect_reason -> Nullable<Text>,
        holds_address -> Bool,
        usages -> Text,
        servers -> Nullable<Text>,
        channel_settings -> Nullable<Text>,
        version -> BigInt,
        create_time -> BigInt,
        update_time -> BigInt,
        state_change_time -> BigInt,
        last_check_time -> Nullable<BigInt>,
        last_success_time -> Nullable<BigInt>,
        consecutive_failures -> Integer,
        first_failure_time -> Nullable<BigInt>,
        last_error -> Text,
        next_check_time -> Nullable<BigInt>,
        forwarding_address -> Nullable<Text>,
    }
}

diesel::table! {
    connection_credentials (connection_id) {
        connection_id -> BigInt,
        account_id -> BigInt,
        key_id -> Text,
        username -> Text,
        password -> Nullable<Binary>,
        refresh_token -> Nullable<Binary>,
        access_token -> Nullable<Binary>,
        access_token_expire_time -> Nullable<BigInt>,
        scopes -> Text,
        account_email -> Text,
    }
}

diesel::table! {
    inbox_requests (account_id, request_id) {
        account_id -> BigInt,
        request_id -> Text,
        method -> Text,
        fingerprint -> Text,
        resource_id -> BigInt,
        create_time -> BigInt,
    }
}

diesel::table! {
    notifications (id) {
        id -> BigInt,
        account_id -> BigInt,
        recipient_user_id -> BigInt,
        recipient_email -> Text,
        kind -> Text,
        connection_id -> BigInt,
        email_address -> Text,
        connection_kind -> Text,
        disconnect_reason -> Nullable<Text>,
        actor_user_id -> BigInt,
        subject -> Text,
        message -> Text,
        create_time -> BigInt,
        next_attempt_time -> Nullable<BigInt>,
        attempts -> Integer,
        sent_time -> Nullable<BigInt>,
        last_error -> Text,
    }
}

diesel::joinable!(connection_credentials -> connections (connection_id));

diesel::table! {
    address_verifications (connection_id) {
        connection_id -> BigInt,
        account_id -> BigInt,
        address -> Text,
        salt -> Binary,
        code_hash -> Binary,
        expire_time -> BigInt,
        attempts -> Integer,
    }
}

diesel::table! {
    verification_sends (id) {
        id -> BigInt,
        address_key -> Text,
        send_time -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    allowlist_data_centers,
    allowlist_ranges,
    allowlist_changes,
    accounts,
    account_sending_domains,
    users,
    teams,
    team_members,
    domain_settings,
    domain_settings_requests,
    attempted_domains,
    inboxes,
    connections,
    connection_credentials,
    inbox_requests,
    notifications,
    address_verifications,
    verification_sends,
);
