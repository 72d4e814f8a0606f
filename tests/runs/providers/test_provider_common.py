from backend.runs.providers._common import MAX_MESSAGE_CHARS, clean_message


def test_clean_message_redacts_the_secret_and_key_shaped_tokens() -> None:
    text = "bad key abc123secret, also sk-proj-****abcd and key-0123456789 here"

    cleaned = clean_message(text, "abc123secret")

    assert cleaned == "bad key [redacted], also [redacted] and [redacted] here"


def test_clean_message_is_one_short_line() -> None:
    cleaned = clean_message("line one\n\nline two " + "x" * 1000, None)

    assert cleaned.startswith("line one line two x")
    assert len(cleaned) == MAX_MESSAGE_CHARS
    assert cleaned.endswith("…")
