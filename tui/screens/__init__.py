"""The app's screens: load, chat (main), and the modal help, history, compare, export, audit and
confirm screens."""

from .audit import AuditScreen
from .chat import ChatScreen
from .compare import CompareScreen
from .confirm import ConfirmScreen
from .export import ExportScreen
from .help import HelpScreen
from .history import HistoryScreen
from .load import LoadScreen

__all__ = ["AuditScreen", "ChatScreen", "CompareScreen", "ConfirmScreen", "ExportScreen", "HelpScreen", "HistoryScreen",
           "LoadScreen"]
