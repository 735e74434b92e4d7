"""The demo's signup flow: create customer, charge card, provision, welcome.

Every step also writes a row to ``demo_effects`` (in the demo's SQLite file)
each time it actually executes, standing in for the outside world: the demo
counts those rows to show the card was charged once.
"""

from __future__ import annotations

import os
import sqlite3
import time

import durably

app = durably.App("demo")

EFFECTS_FILE_ENV = "DURABLY_DEMO_EFFECTS"
PROVISION_SECONDS_ENV = "DURABLY_DEMO_PROVISION_SECONDS"


def effects_path() -> str:
    return os.environ.get(EFFECTS_FILE_ENV, "durably.db")


def record_effect(step: str, detail: str) -> None:
    conn = sqlite3.connect(effects_path(), timeout=30)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS demo_effects "
            "(run_key TEXT, step TEXT, detail TEXT, pid INTEGER, at REAL)"
        )
        conn.execute(
            "INSERT INTO demo_effects VALUES (?, ?, ?, ?, ?)",
            (durably.current_step_key(), step, detail, os.getpid(), time.time()),
        )
        conn.commit()
    finally:
        conn.close()


@app.step()
def create_customer(email: str) -> dict[str, str]:
    time.sleep(0.2)
    customer = {"id": "cus_" + email.split("@")[0], "email": email}
    record_effect("create_customer", customer["id"])
    return customer


@app.step(retry=durably.Retry(max_attempts=5, initial=0.5))
def charge_card(customer_id: str, cents: int) -> str:
    # A real provider would get durably.current_step_key() as its idempotency
    # key, so even a re-run of this step could not charge twice.
    time.sleep(0.2)
    charge = f"ch_{customer_id}_{cents}"
    record_effect("charge_card", f"charged ${cents / 100:.2f}")
    return charge


@app.step()
def provision_workspace(customer_id: str) -> dict[str, str]:
    time.sleep(float(os.environ.get(PROVISION_SECONDS_ENV, "0.3")))
    workspace = {"id": "ws_" + customer_id[4:], "url": f"https://{customer_id[4:]}.example.app"}
    record_effect("provision_workspace", workspace["id"])
    return workspace


@app.step()
def send_welcome_email(email: str, url: str) -> str:
    time.sleep(0.1)
    record_effect("send_welcome_email", f"to {email}")
    return f"welcome mail sent to {email}"


@app.workflow(version="1")
def signup(ctx: durably.Context, email: str, plan_cents: int = 4900) -> dict[str, str]:
    customer = create_customer(email)
    charge = charge_card(customer["id"], plan_cents)
    workspace = provision_workspace(customer["id"])
    send_welcome_email(email, workspace["url"])
    return {"customer": customer["id"], "charge": charge, "workspace": workspace["url"]}
