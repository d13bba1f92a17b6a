// Deforum Wan: hover hints for the Wan tab's controls. Touches nothing outside #tab_deforum_wan.
(function () {
    const hints = {
        deforum_wan_setup_check: "Ask the worker again whether renders can run (it starts once: a few seconds).",
        deforum_wan_latest: "Load the newest *_settings.txt Deforum saved in its output folders (our own renders' files only when Deforum left none), or deforum_settings.txt in the web UI folder. A resume flag in the file is cleared: resume from Unfinished renders.",
        deforum_wan_init_image: "The picture the first clip starts from, in place of the settings' init_image; it is kept in the output folder's deforum_wan_api_inputs. Clear it to use the settings' own.",
        deforum_wan_init_path: "A file inside the web UI's output or input folders, or an http(s) URL (fetched once, with the API's rules).",
        deforum_wan_init_strength: "Deforum's strength: how strongly a VACE first clip keeps the init image. Starts at the settings' value.",
        deforum_wan_model: "Wan model folders found in the models folder (Settings > Deforum Wan).",
        deforum_wan_continuity: "How each clip continues the previous one: VACE carries the last frames over, I2V starts from the last frame, none renders clips independently.",
        deforum_wan_overlap: "Frames of the previous clip that the next clip continues from (VACE).",
        deforum_wan_color_match: "Match each clip's colours to the previous clip to stop drift.",
        deforum_wan_memory: "auto picks from free GPU memory; model/sequential/group offload trade speed for memory.",
        deforum_wan_plan_table: "Edit a prompt cell to change that keyframe's prompt; edits are saved as wan_prompts.",
        deforum_wan_update_plan: "Re-plan with the options above and the prompt edits.",
        deforum_wan_enhance_preview: "Run the Qwen enhancer in a worker process and show each clip's prompt before and after.",
        deforum_wan_generate: "Queue the render; progress, the latest frame and the video appear below.",
        deforum_wan_interrupt: "Stop after the current step; finished frames stay on disk and can be resumed.",
        deforum_wan_resume: "Continue the chosen unfinished render from its last complete frame.",
    };
    onUiUpdate(function () {
        const tab = gradioApp().querySelector("#tab_deforum_wan");
        if (!tab) return;
        for (const id in hints) {
            const el = tab.querySelector("#" + id);
            if (el && !el.title) el.title = hints[id];
        }
    });
})();
