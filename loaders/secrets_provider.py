"""The secret manager as a dlt config provider: `dlt.secrets.value` for the keys below is asked
of the manager after dlt's own providers (environment, .dlt/secrets.toml, config.toml) found
nothing. The chain itself (prefix, fallback, fail closed) is core/secrets.py's."""

from __future__ import annotations

from typing import Any

import dlt
from dlt.common.configuration.providers.vault import VaultDocProvider

from core.secrets import FOOTBALL_API_TOKEN, read_from_manager, secrets_config

# dlt's key path → the secret's name under the environment's prefix
MANAGED_KEYS = {"sources.football_api.api_token": FOOTBALL_API_TOKEN}


class SecretManagerProvider(VaultDocProvider):
    def __init__(self) -> None:
        super().__init__(only_secrets=True, only_toml_fragments=False)

    @property
    def name(self) -> str:
        return "ELT secret manager"

    def get_value(self, key: str, hint: type, pipeline_name: str, *sections: str) -> tuple[Any | None, str]:
        # No cache across resolutions: the next run sees a rotated secret.
        self.clear_lookup_cache()
        self._config_doc = {}
        return super().get_value(key, hint, pipeline_name, *sections)

    def _look_vault(self, full_key: str, hint: type) -> str | None:
        name = MANAGED_KEYS.get(full_key)
        return read_from_manager(name, secrets_config()) if name else None

    def _list_vault(self) -> set[str]:
        return set(MANAGED_KEYS)


def register_secret_manager() -> None:
    """Once per process; the provider reads ELT_SECRETS at each lookup, so it costs nothing unset."""
    provider = SecretManagerProvider()
    if all(existing.name != provider.name for existing in dlt.secrets.config_providers):
        dlt.secrets.register_provider(provider)
