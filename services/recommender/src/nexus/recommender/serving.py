"""A trained model as the model runtime serves it: the signed artifact loads into a `Scorer`."""

from __future__ import annotations

from nexus.common.errors import InvalidArgument
from nexus.common.runtime import Model, ModelSource
from nexus.recommender.recommending import ItemQuery, Ranked, Scorer, Trained, UserQuery

FRAMEWORK = "nexus-recommender"
"""The registry framework of the models the service registers."""

Query = UserQuery | ItemQuery


class ServedModel(Model[Query, list[Ranked] | None]):
    """One registered model version of a catalog."""

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self._scorer: Scorer | None = None

    async def load(self) -> None:
        """Fetches and verifies the signed model, then indexes it (on the executor).

        Raises:
            InvalidArgument: The artifact is not a trained recommender model.
        """
        trained = await self.source.signed_object()
        if not isinstance(trained, Trained):
            raise InvalidArgument(
                f"model {self.source.name} version {self.source.version} is not a recommender"
            )
        self._scorer = await self.source.run(lambda: Scorer(trained))

    @property
    def scorer(self) -> Scorer:
        """The indexed model."""
        assert self._scorer is not None, "load() first"
        return self._scorer

    def predict(self, inputs: Query) -> list[Ranked] | None:
        """A user's top-N, or an item's neighbours (None: the model does not know the item)."""
        if isinstance(inputs, UserQuery):
            return self.scorer.recommend(inputs)
        return self.scorer.similar(inputs)

    def unload(self) -> None:
        """Lets go of the model."""
        self._scorer = None
