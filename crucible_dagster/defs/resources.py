"""The Dagster resource through which ops reach Crucible's settings, storage and lease table."""

import dagster as dg

from crucible_dagster.settings import Settings, get_settings


class CrucibleResource(dg.ConfigurableResource):
    """Crucible's state: CRUCIBLE_HOME, object storage and the lease table."""

    storage_url: str | None = None

    def settings(self) -> Settings:
        base = get_settings()
        if self.storage_url:
            return base.model_copy(update={"storage_url": self.storage_url})
        return base
