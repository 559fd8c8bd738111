"""EdgeCascade cloud service: Flask API running the final partition."""

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings, load_cloud_config
from edgecascade.cloud_service.inference import CloudInference

__all__ = ["CloudConfig", "CloudInference", "CloudSettings", "create_app", "load_cloud_config"]
