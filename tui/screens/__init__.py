"""The app's screens: load, chat (main), and the modal help, history, compare, export and confirm screens."""

from .chat import ChatScreen
from .compare import CompareScreen
from .confirm import ConfirmScreen
from .export import ExportScreen
from .help import HelpScreen
from .history import HistoryScreen
from .load import LoadScreen

__all__ = ["ChatScreen", "CompareScreen", "ConfirmScreen", "ExportScreen", "HelpScreen", "HistoryScreen", "LoadScreen"]
