// Deforum Wan: hover hints for the Wan tab's controls. Touches nothing outside #tab_deforum_wan.
(function () {
    const hints = {
        "Sensitivity": "Higher values describe smaller camera motions in the prompt.",
        "Overlap": "Frames of the previous clip that the next clip continues from.",
    };
    onUiUpdate(function () {
        const tab = gradioApp().querySelector("#tab_deforum_wan");
        if (!tab) return;
        tab.querySelectorAll("span, button, label").forEach(function (el) {
            const tip = hints[el.textContent.trim()];
            if (tip && !el.title) el.title = tip;
        });
    });
})();
