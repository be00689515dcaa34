"""The project's error types. Each message is one line naming the thing and what is wrong."""


class FetalheadError(Exception):
    """Base of every error the tool reports to a person as one line."""


class BundleError(FetalheadError):
    """A model bundle that cannot be read, or does not match its own config."""


class WeightsError(FetalheadError):
    """Backbone weights that cannot be found or loaded."""


class DataError(FetalheadError):
    """A dataset, scan, label file or image that cannot be read or used."""


class ConfigError(FetalheadError, ValueError):
    """A setting with a wrong name, type or value; the message is one line."""
