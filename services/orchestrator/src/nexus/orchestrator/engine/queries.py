"""Reading runs: a filtered page of runs, newest first, and a page of a run's history."""

from __future__ import annotations

from dataclasses import dataclass

from nexus.common.paging import page_request, paginate
from nexus.orchestrator.engine.records import RunRecord, StepRecord
from nexus.orchestrator.engine.store import RunStore

_FAR_FUTURE_S = 10**11


@dataclass(frozen=True)
class RunFilter:
    """Which runs a list shows (empty / 0: any)."""

    workflow: str = ""
    state: str = ""
    created_from: float = 0.0
    created_to: float = 0.0

    def __call__(self, run: RunRecord) -> bool:
        return (
            (not self.workflow or run.workflow == self.workflow)
            and (not self.state or run.state == self.state)
            and (not self.created_from or run.created >= self.created_from)
            and (not self.created_to or run.created < self.created_to)
        )


async def list_runs(
    runs: RunStore, chosen: RunFilter, page_size: int, page_token: str
) -> tuple[list[RunRecord], str]:
    """A page of the runs `chosen` keeps, newest first.

    Raises:
        InvalidArgument: A bad page size or token.
    """
    page = page_request(page_size, page_token, scope=f"runs/{chosen!r}")
    kept = [run for run in await runs.records() if chosen(run)]
    return paginate(kept, _newest_first, page)


async def history(
    runs: RunStore, run_id: str, page_size: int, page_token: str
) -> tuple[list[StepRecord], str]:
    """A page of a run's executed steps, in order.

    Raises:
        NotFound: No such run.
        InvalidArgument: A bad page size or token.
    """
    page = page_request(page_size, page_token, scope=f"history/{run_id}")
    steps = list(enumerate((await runs.expanded(await runs.get(run_id))).history))
    chosen, token = paginate(steps, lambda item: item[0], page)
    return [step for _, step in chosen], token


def _newest_first(run: RunRecord) -> str:
    return f"{_FAR_FUTURE_S - run.created:020.6f}:{run.run_id}"
