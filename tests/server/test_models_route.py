"""GET /v1/models/{id} (`client.models.retrieve`, issue 17 item 4): the card for the served name, 404 in OpenAI's
shape for any other id, behind the API key like the rest of /v1."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server.conftest import API_KEY, MODEL


def test_retrieve_the_served_model(client):
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.object == "model" and card.owned_by == "specserve"
    assert card.model_dump() == client.models.list().data[0].model_dump()


def test_retrieve_an_unknown_model_is_a_404_in_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    r = httpx.get(server.base_url + "/v1/models/org/other-model", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "model_not_found" and "'org/other-model'" in err["message"] and MODEL in err["message"]


def test_retrieve_needs_the_api_key(server):
    r = httpx.get(f"{server.base_url}/v1/models/{MODEL}")
    assert r.status_code == 401 and r.json()["error"]["type"]
