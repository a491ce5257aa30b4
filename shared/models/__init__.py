"""SQLAlchemy models of the shared schema, one module per aggregate."""

from shared.models.audit import AuditLog
from shared.models.base import Base
from shared.models.datasets import Dataset, DatasetImport, DatasetVersion
from shared.models.deployments import Deployment, MerchandisingRule
from shared.models.events import Event, Impression, OnlineRollup, OnlineRollupHour
from shared.models.integrations import GitConnection, JiraConnection, JiraLink, JiraOutbox, TaskCommit
from shared.models.labeling import LabelingAssignment, LabelingItem, LabelingQueue
from shared.models.model_versions import ModelVersion
from shared.models.pipelines import Pipeline, PipelineRun, Webhook, WebhookDelivery
from shared.models.projects import Milestone, Project, ProjectMember
from shared.models.tasks import Task, TaskComment
from shared.models.training import TrainingJob
from shared.models.users import ApiKey, ConsoleSession, User

__all__ = [
    "ApiKey",
    "AuditLog",
    "Base",
    "ConsoleSession",
    "Dataset",
    "DatasetImport",
    "DatasetVersion",
    "Deployment",
    "Event",
    "GitConnection",
    "Impression",
    "JiraConnection",
    "JiraLink",
    "JiraOutbox",
    "LabelingAssignment",
    "LabelingItem",
    "LabelingQueue",
    "MerchandisingRule",
    "Milestone",
    "ModelVersion",
    "OnlineRollup",
    "OnlineRollupHour",
    "Pipeline",
    "PipelineRun",
    "Project",
    "ProjectMember",
    "Task",
    "TaskComment",
    "TaskCommit",
    "TrainingJob",
    "User",
    "Webhook",
    "WebhookDelivery",
]
