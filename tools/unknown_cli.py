"""``edgecascade unknown``: look at the groups of unknown uploads in a cloud and name them as classes.

::

    edgecascade unknown groups --cloud URL --token-file F [--refresh]
    edgecascade unknown show ID --cloud URL --token-file F [--png FILE]
    edgecascade unknown name ID CLASS_NAME --cloud URL --token-file F

Each talks to the cloud's API with an admin token (``/v1/unknown-groups``). Exit status:
0 done, 1 the cloud refused or could not be reached (its message is printed), 2 bad
arguments or an unreadable token file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecascade.device_sdk.errors import ConfigError, EdgeCascadeError

if TYPE_CHECKING:
    from edgecascade.device_sdk.transport.http import CloudHttp

ROUTE = "/v1/unknown-groups"  # the cloud's ROUTE_UNKNOWN_GROUPS (a client imports no cloud code)
SHOWN_MEMBERS = 20


def register(sub: Any) -> None:
    """Add ``unknown`` to the top-level subcommands."""
    p = sub.add_parser("unknown", help="groups of unknown uploads in the cloud: list, show, name as a class")
    unknown_sub = p.add_subparsers(dest="unknown", required=True)
    p = unknown_sub.add_parser("groups", help="list the groups (with --refresh: group new uploads first)")
    p.add_argument("--refresh", action="store_true", help="group the unknown uploads in no group yet first")
    _cloud_options(p)
    p.set_defaults(func=_groups)
    p = unknown_sub.add_parser("show", help="a group and its first members")
    p.add_argument("group", type=int, metavar="ID", help="the group's id")
    p.add_argument("--png", metavar="FILE", help="also save a grid of up to 16 members' images to FILE")
    _cloud_options(p)
    p.set_defaults(func=_show)
    p = unknown_sub.add_parser(
        "name",
        help="name a group as a class; its members get the class as their label",
        description="Name group ID as CLASS_NAME: a served class keeps its index, a new name becomes "
        "the next class. A name is final (the same name again changes nothing).",
    )
    p.add_argument("group", type=int, metavar="ID", help="the group's id")
    p.add_argument("class_name", metavar="CLASS_NAME", help="the class the group's members are")
    _cloud_options(p)
    p.set_defaults(func=_name)


def _cloud_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud", required=True, metavar="URL", help="the cloud's URL")
    p.add_argument("--token-file", required=True, metavar="F", help="a file holding an admin token")
    p.add_argument("--ca-file", metavar="PEM", help="the CA of the cloud's HTTPS certificate")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default %(default)s)")


def cloud_client(args: argparse.Namespace) -> CloudHttp:
    """An HTTP client of ``--cloud`` with the admin token of ``--token-file`` (ConfigError if unreadable)."""
    from edgecascade.device_sdk.transport.http import CloudHttp

    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --token-file {args.token_file}: {exc.strerror or exc}") from None
    return CloudHttp(
        args.cloud, token, timeout=args.timeout, ca_file=args.ca_file, user_agent="edgecascade-cli"
    )


def _groups(args: argparse.Namespace) -> int:
    with cloud_client(args) as http:
        try:
            if args.refresh:
                report = http.call_json("POST", f"{ROUTE}/refresh")
                for cut in report["cuts"]:
                    print(_refreshed(cut))
            listing = http.call_json("GET", ROUTE)
        except EdgeCascadeError as exc:
            print(f"edgecascade: the cloud did not answer with the groups: {exc}")
            return 1
    groups = listing["groups"]
    if not groups:
        print("no groups yet")
    for group in groups:
        print(_summary(group))
    print(f"{listing['ungrouped']} unknown examples in no group")
    return 0


def _show(args: argparse.Namespace) -> int:
    with cloud_client(args) as http:
        try:
            page = http.call_json("GET", f"{ROUTE}/{args.group}?limit={SHOWN_MEMBERS}")
            picture = http.get(f"{ROUTE}/{args.group}/examples.png") if args.png else None
        except EdgeCascadeError as exc:
            print(f"edgecascade: the cloud did not show group {args.group}: {exc}")
            return 1
    print(_summary(page["group"]))
    for example in page["examples"]:
        label = "-" if example["label"] is None else f"{example['label']} ({example['label_source']})"
        print(f"  {example['id']}  {example['device_id']}  predicted {example['predicted']}  label {label}")
    if page["next_cursor"] is not None:
        print(f"  ... ({page['group']['size']} in all)")
    if picture is not None:
        Path(args.png).write_bytes(picture)
        print(f"wrote {args.png}")
    return 0


def _name(args: argparse.Namespace) -> int:
    with cloud_client(args) as http:
        try:
            group = http.call_json("PUT", f"{ROUTE}/{args.group}", {"class_name": args.class_name})
        except EdgeCascadeError as exc:
            print(f"edgecascade: the cloud did not name group {args.group}: {exc}")
            return 1
    print(_summary(group))
    return 0


def _summary(group: dict[str, Any]) -> str:
    name = (
        "unnamed" if group["class_name"] is None else f"class {group['class_index']} {group['class_name']!r}"
    )
    images = ", with images" if group["has_images"] else ""
    return f"group {group['id']}: {group['cut']}, {group['size']} examples, {name}{images}"


def _refreshed(cut: dict[str, Any]) -> str:
    if cut["skipped"]:
        return f"{cut['cut']}: not grouped: {cut['skipped']}"
    return (
        f"{cut['cut']}: {cut['considered']} ungrouped, {cut['joined']} joined groups, "
        f"{cut['grouped']} formed {cut['new_groups']} new groups, {cut['ungrouped']} left, "
        f"{cut['unreadable']} unreadable"
    )
