"""Screenshots of every dashboard page and state, at 1440x900 and 390x844.

Starts a real API on a throwaway SQLite database, fills it the way
tests/ui_helpers.seed_sample does (jobs created through the API, moved by the
stand-in worker), signs in through the page and saves one PNG per page, state
and width into this folder (or the folder given):

    .venv/bin/python docs/ui/shoot.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sqlalchemy import update  # noqa: E402
from ui_helpers import chrome, live_api, report, seed_sample, sign_in  # noqa: E402

from api.auth import hash_token  # noqa: E402
from pgd_service.db.models import ApiToken  # noqa: E402
from pgd_service.db.types import utcnow  # noqa: E402

SIZES = {"desktop": (1440, 900), "mobile": (390, 844)}


def settle(driver, seconds: float = 1.2) -> None:  # noqa: ANN001
    """Let the page fetch and draw (and the chart's first redraw happen)."""
    time.sleep(seconds)


def shoot_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        with live_api(Path(tmp) / "full") as live, live_api(Path(tmp) / "empty") as empty:
            admin = live.token("ada", is_admin=True)
            sample = seed_sample(live, admin)
            revoked = live.token("bob")
            with live.session_factory() as session:
                session.execute(
                    update(ApiToken)
                    .where(ApiToken.token_hash == hash_token(revoked))
                    .values(revoked_at=utcnow())
                )
                session.commit()
            pages = {
                "jobs": "jobs",
                "job-running": f"jobs/{sample.running}",
                "job-succeeded": f"jobs/{sample.students['pgd']}",
                "job-failed": f"jobs/{sample.failed}",
                "leaderboard": "results",
                "leaderboard-costs": "results?detector=fcos&dataset=shapes",
                "leaderboard-grouped": "results?group=config",
                "compare": "compare?ids="
                + ",".join([sample.students["pgd"], sample.students["inherit"], sample.baseline]),
                "sweeps-studies": "sweeps",
                "sweep": f"sweeps/{sample.sweep}",
                "study": f"studies/{sample.study}",
                "submit": "submit?preset=tiny-fcos-student",
            }
            for size, (width, height) in SIZES.items():
                driver = chrome(width, height)
                try:

                    def save(name: str, driver=driver, size=size) -> None:  # noqa: ANN001
                        path = out / f"{name}-{size}.png"
                        driver.save_screenshot(str(path))
                        saved.append(path)

                    driver.get(f"{live.url}/ui/#/signin")
                    settle(driver, 0.5)
                    save("signin")
                    sign_in(driver, live.url, admin)
                    for name, route in pages.items():
                        driver.get(f"{live.url}/ui/#/{route}")
                        settle(driver)
                        if name == "job-running":
                            # A few more points arrive live while the page is open.
                            first = sample.steps // 2 + (1 if size == "desktop" else 3)
                            report(
                                live, sample.running, {"loss": [0.9, 0.85]}, 0.55, first_step=first
                            )
                            settle(driver, 1.0)
                        save(name)
                    # The submit form after the API refused a field.
                    field = driver.find_element("id", "f-schedule.lr")
                    field.clear()
                    field.send_keys("-0.5")
                    driver.find_element("id", "submit").click()
                    settle(driver, 0.8)
                    driver.execute_script(
                        "document.getElementById('f-schedule.lr').scrollIntoView({block: 'center'})"
                    )
                    save("submit-422")
                    # States: nothing yet, a revoked token, the API gone.
                    sign_in(driver, empty.url, empty.token("dora"))
                    settle(driver, 0.8)
                    save("empty-jobs")
                    driver.get(f"{live.url}/ui/#/signin")
                    driver.execute_script(
                        "sessionStorage.setItem('pgd.token', arguments[0]);"
                        'sessionStorage.setItem(\'pgd.who\', \'{"owner":"bob","is_admin":false}\')',
                        revoked,
                    )
                    driver.get(f"{live.url}/healthz")
                    driver.get(f"{live.url}/ui/#/jobs")
                    settle(driver, 0.8)
                    save("token-revoked")
                finally:
                    driver.quit()
            # Last: the API stops under a loaded dashboard.
            drivers = {size: chrome(*dims) for size, dims in SIZES.items()}
            try:
                for driver in drivers.values():
                    sign_in(driver, empty.url, empty.token("dora"))
                empty.stop()
                for size, driver in drivers.items():
                    driver.get(f"{empty.url}/ui/#/results")
                    settle(driver, 0.8)
                    path = out / f"api-down-{size}.png"
                    driver.save_screenshot(str(path))
                    saved.append(path)
            finally:
                for driver in drivers.values():
                    driver.quit()
    return saved


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    for path in shoot_all(target):
        print(path)
