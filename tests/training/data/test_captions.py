"""training.data.captions: camera-motion phrases leave the prompts, scene words stay."""
from training.data.captions import clean_caption


def test_caption_cleaning_removes_camera_motion():
    captions = ["The camera slowly moves forward through a forest, then turns left toward a wooden bridge.",
                "A drone flies over a river at sunset. The camera pans to the right, revealing tall buildings.",
                "The drone is flying backward over snowy mountains while the camera tilts down to the valley.",
                "Aerial tracking shot of a coastal town; the view rises above the rooftops.",
                "A busy street with cars, with smooth forward movement along the road."]
    banned = ("forward", "backward", "left", "right", "pan", "tilt", "turn", "rise", "tracking", "camera")
    for caption in captions:
        cleaned = clean_caption(caption)
        assert not [word for word in banned if word in cleaned.lower()], cleaned
    assert clean_caption(captions[0]) == "Through a forest toward a wooden bridge."
    assert clean_caption("A drone flies over a green field with red pillars at dusk") == \
        "A drone flies over a green field with red pillars at dusk"
