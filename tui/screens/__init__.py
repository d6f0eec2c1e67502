"""The app's screens: load, chat (main), and the modal help, history, compare and export screens."""

from .chat import ChatScreen
from .compare import CompareScreen
from .export import ExportScreen
from .help import HelpScreen
from .history import HistoryScreen
from .load import LoadScreen

__all__ = ["ChatScreen", "CompareScreen", "ExportScreen", "HelpScreen", "HistoryScreen", "LoadScreen"]
