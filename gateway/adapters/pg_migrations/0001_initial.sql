-- battery-gateway ingest, schema 1: what devices signed, as verified by the ingest workers.
-- Applied by `battery-gateway ingest` (or `ingest --migrate`) in one transaction under an advisory lock;
-- docs/fleet.md describes every table.

-- Every accepted envelope, once: the chain of each device and epoch. A batch of readings covers
-- seq .. seq + n - 1; its later sequence numbers are in `readings`.
CREATE TABLE messages (
    dev          text        NOT NULL,
    ep           bigint      NOT NULL,
    seq          bigint      NOT NULL,
    n            integer     NOT NULL CHECK (n >= 1),
    kind         text        NOT NULL,
    ts           timestamptz NOT NULL,           -- measurement time (payload ts)
    prev         bytea       NOT NULL,           -- SHA-256 of the previous envelope of this epoch
    digest       bytea       NOT NULL,           -- SHA-256 of this envelope (the next one's prev)
    envelope     bytea       NOT NULL,           -- the COSE_Sign1 as the device signed it
    topic        text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dev, ep, seq)
);

-- One row per reading (a batch expanded), deduplicated by (dev, ep, seq): what analysts query.
CREATE TABLE readings (
    dev   text        NOT NULL,
    ep    bigint      NOT NULL,
    seq   bigint      NOT NULL,
    ts    timestamptz NOT NULL,
    bat   text,                                  -- pseudonymous pack id, when the car tells it
    m     jsonb       NOT NULL,                  -- the measurements, canonical field names
    digest bytea      NOT NULL,                  -- the envelope that carried it
    PRIMARY KEY (dev, ep, seq)
);
CREATE INDEX readings_by_time ON readings (dev, ts);

-- The latest passport per battery: named = true, battery is the pack id the car gave (`bat`); named =
-- false, battery is the device id (the car names no pack). The same device's later (ep, seq) replaces it;
-- another device's when it is later by LEAST(ts, arrival): a ts in the future cannot pin the row.
CREATE TABLE passports (
    battery     text        NOT NULL,
    named       boolean     NOT NULL,
    dev         text        NOT NULL,
    ep          bigint      NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    payload     jsonb       NOT NULL,
    envelope    bytea       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (battery, named)
);

-- Each device's chain per epoch, kept up to date by every batch: how many sequence numbers arrived and
-- the highest. max_seq - received is how many are missing; `ingest --check` says which.
CREATE TABLE chain_state (
    dev        text        NOT NULL,
    ep         bigint      NOT NULL,
    received   bigint      NOT NULL,
    max_seq    bigint      NOT NULL,
    last_ts    timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dev, ep)
);

-- What was refused, with the reason, once per (topic, envelope): forged, tampered, unknown device,
-- published on another device's topic, unreadable or unstorable, or a conflict: an envelope signed by its
-- device for sequence numbers a different stored envelope holds (a device that reused its chain).
CREATE TABLE rejections (
    id          bigserial   PRIMARY KEY,
    digest      bytea       NOT NULL UNIQUE,     -- SHA-256 over topic, a zero byte and the envelope
    topic       text        NOT NULL,
    dev         text,                            -- the device the payload claims (unverified unless conflict)
    reason      text        NOT NULL,
    conflict    boolean     NOT NULL DEFAULT false,
    envelope    bytea       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejections_by_dev ON rejections (dev);
