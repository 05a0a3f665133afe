"""The sign-in email: recipient check and rendering, with no network I/O."""

from __future__ import annotations

import html
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from functools import cache
from importlib.resources import files
from string import Template

from email_validator import EmailNotValidError, validate_email

from tasks.errors import InvalidAddressError, PermanentEmailError

SIGN_IN_SUBJECT = "Your sign-in code"


def check_recipient(email: str) -> str:
    """The normalised address, or InvalidAddressError; syntax only, no DNS lookup."""
    if not isinstance(email, str):
        raise InvalidAddressError("recipient address must be a string such as 'ada@example.com'")
    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise InvalidAddressError(
            f"invalid recipient address {email!r}: {str(error).rstrip('.')}; "
            "fix the address and send again"
        ) from None


def sign_in_message(recipient: str, name: str, code: str, mail_from: str) -> EmailMessage:
    """A multipart/alternative email (plain text, then HTML) carrying ``code``."""
    values = {"name": str(name), "code": str(code).strip()}
    if not values["code"]:
        raise PermanentEmailError("sign-in code is empty; pass the code the user must enter")
    message = EmailMessage()
    message["Subject"] = SIGN_IN_SUBJECT
    message["From"] = mail_from
    message["To"] = Address(display_name=_one_line(values["name"]), addr_spec=recipient)
    message["Message-ID"] = make_msgid(domain=_domain_of(mail_from))
    message.set_content(_template("sign_in.txt").substitute(values))
    escaped = {key: html.escape(value) for key, value in values.items()}
    message.add_alternative(_template("sign_in.html").substitute(escaped), subtype="html")
    return message


@cache
def _template(name: str) -> Template:
    return Template(files("tasks.templates").joinpath(name).read_text(encoding="utf-8"))


def _one_line(text: str) -> str:
    # A header must not carry line breaks: they would let a name inject headers.
    return " ".join(text.split())


def _domain_of(mail_from: str) -> str | None:
    address = parseaddr(mail_from)[1]
    return address.rpartition("@")[2] if "@" in address else None
